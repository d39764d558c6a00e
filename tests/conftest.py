import os
import sys

# tests/toy.py is imported by recipes and tests as `toy`
sys.path.insert(0, os.path.dirname(__file__))
