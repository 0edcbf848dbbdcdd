"""C{python -m txsmtpsrv}: a development mail sink (see L{txsmtpsrv._sink})."""

from txsmtpsrv._sink import main

if __name__ == "__main__":
    main()
