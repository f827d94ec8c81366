import sys

from shuangyu.chat.cli import main

sys.exit(main())
