"""`torchwire bench`: a closed-loop load generator that reports throughput against measured ceilings."""
