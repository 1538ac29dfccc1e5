"""The processes: `smartgen api` (`api.py`, one process or several on one port through
`sticky.py`), `smartgen worker` (`worker.py`) and `smartgen dev` (`dev.py`, both on
embedded defaults from `embedded.py`), with what they share: uvicorn's configuration
(`http.py`), child supervision (`supervise.py`), start-up checks (`startup.py`) and
garbage-collector settling (`heap.py`)."""
