"""Small geometry helpers: cameras, mesh graphs and a PyTorch triangle rasteriser."""
