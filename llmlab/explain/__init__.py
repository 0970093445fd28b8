"""The maths behind the playground's pages: attention maps, positions, spectra, projections.

Every function here works on real tensors from real models; the server only calls them."""
