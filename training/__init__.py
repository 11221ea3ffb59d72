"""Sparse-to-sparse training of RNN language models (installed as ``selfish_deploy.training``)."""
