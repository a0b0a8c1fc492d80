"""``python -m parcel_stream.cli``: the same as the ``parcel-stream`` command."""

import sys

from parcel_stream.cli import main

sys.exit(main())
