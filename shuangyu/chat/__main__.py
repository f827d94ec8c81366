import sys

from shuangyu.errors import ctrl_c_is_one_line

# a Ctrl-C while the chat's code imports, or one main() lets through, is one line and exit 130
with ctrl_c_is_one_line("python -m shuangyu.chat", "nothing was written"):
    from shuangyu.chat.cli import main

    sys.exit(main())
