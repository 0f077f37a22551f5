"""Model analysis: op table, MACs, memory, blocks, channel groups."""
