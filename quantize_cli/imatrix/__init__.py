"""The importance matrix: the collector (collector.py) fed by the runtime's forward pass, and the
`imatrix` command's logic (command.py). The file formats are in formats/imatrix_file.py."""
