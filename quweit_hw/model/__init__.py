"""The torch side: DWN layers, the ViT and GPT, data, training, checkpoints, export to a bundle
and the operation accounting. Imports the contract, never the gateware (and no amaranth)."""
