import sys

from voiceagent.app.entry import main

sys.exit(main())
