"""The gateware side (Amaranth): the MLP engine and its parts, Verilog and RTLIL, simulation
drivers and harnesses, the UART link, clock crossing, board top and synthesis. Imports the
contract, never the torch side."""
