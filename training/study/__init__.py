"""The sparsity study of Darji's thesis (arXiv 2407.20601) on the project's own masked cells (issue 5)."""
