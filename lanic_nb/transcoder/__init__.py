"""Sparse transcoders (notebook 03): an ensemble of members that predict the classifier's hidden layer from
its input through a wide sparse code, trained together in stacked tensors, and the transcoder stage."""
