"""C{python -m txsmtpsrv}: a development mail sink (see L{txsmtpsrv._cli})."""

from txsmtpsrv._cli import main

if __name__ == "__main__":
    main()
