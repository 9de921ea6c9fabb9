"""Serving a MusicGen(-melody) fine-tune behind the hosted `fofr/musicgen-triohatala` API.

`predict.py` holds the Cog schema; everything it calls lives in the modules of this package.
"""
