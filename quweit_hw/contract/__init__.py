"""The contract between the two worlds, numpy only: the bundle and its reader, the golden model,
the wire protocol of the board link, and board settings. Imports neither torch nor the gateware."""
