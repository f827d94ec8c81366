import sys

from shuangyu.report.build import main

sys.exit(main())
