import sys

from shuangyu.errors import ctrl_c_is_one_line

# a Ctrl-C while the report's code imports, or one main() lets through, is one line and exit 130
with ctrl_c_is_one_line("python -m shuangyu.report", "no file was left half written; run it again to build the report"):
    from shuangyu.report.build import main

    sys.exit(main())
