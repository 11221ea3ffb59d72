"""``python -m selfish_deploy.kernels``: which kernels were built and which CPU features they use."""

import json
import sys

from . import report

if __name__ == "__main__":
    if "--help" in sys.argv or "-h" in sys.argv:
        print("usage: python -m selfish_deploy.kernels [--json]\n\nPrint the compiled kernels' status, build, "
              "chosen instruction set and the CPU features they use.")
        raise SystemExit(0)
    info = report()
    if "--json" in sys.argv:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            print(f"{k:<{width}}  {', '.join(v) if isinstance(v, list) else v}")
