"""The conceptedit Gradio demo: ``python app.py [--model M] [--host H] [--port P]``.

A thin script over :mod:`conceptedit.demo` (also ``conceptedit demo``). The page is generated from
the plugin registry, so new plugins appear without changes here.
"""

from conceptedit.demo import main

if __name__ == "__main__":
    main()
