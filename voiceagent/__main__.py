import sys

from voiceagent.app.cli import main

sys.exit(main())
