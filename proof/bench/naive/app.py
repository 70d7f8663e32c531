"""The module's hello-flask, as the module writes it: the baseline that `make bench` measures the images against."""

import os

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello():
    return f"Hello, {os.environ.get('NAME', 'World')}!"


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=8000)
