"""`torchwire export`: turn a PyTorch module into a ready model folder (`model.pt2` + `config.pbtxt`).

command.py is the command line (imported by `torchwire --help`, so it imports no torch); build.py
exports and writes folders; convert.py finds what to export.
"""
