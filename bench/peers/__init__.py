"""Reference servers for side-by-side runs: the same chat events on python-socketio and on Node's socket.io."""
