import sys

from fer_train.train import main

sys.exit(main())
