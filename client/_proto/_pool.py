"""The descriptor pool our generated messages register in (see protos/generate.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
