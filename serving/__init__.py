"""HTTP serving of exported sparse language models (installed as ``selfish_deploy.serving``).

Never imports ``selfish_deploy.training``: the server only needs an export directory.
"""
