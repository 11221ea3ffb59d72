"""selfish-deploy: sparse recurrent language models from training to production.

Stages talk through directories: training writes a *run directory*, export turns it into an
*export directory* (what goes to the Hub), and the runtime and server read export directories.
"""

__version__ = "0.1.0"
