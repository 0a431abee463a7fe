"""`python -m linkscope`."""

from linkscope.cli import main

if __name__ == "__main__":
    main()
