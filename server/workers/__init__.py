"""`torchwire serve --workers N`: N whole servers on one port, one supervisor, one face to operators."""
