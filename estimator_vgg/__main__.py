"""`python -m estimator_vgg CONFIG.yaml [section.key=value ...]`"""
import sys

from estimator_vgg.cli import main

sys.exit(main())
