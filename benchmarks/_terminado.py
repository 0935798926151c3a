"""terminado (Jupyter's terminal server) serving one command on 127.0.0.1, for
`./run bench peers`: python _terminado.py PORT COMMAND... (run with the peers' own venv,
.bench/venv, where terminado is installed). Each WebSocket on /websocket gets its own
terminal running COMMAND (terminado's UniqueTermManager), as in terminado's examples."""

import sys

import terminado
import tornado.ioloop
import tornado.web


def main() -> None:
    port, command = int(sys.argv[1]), sys.argv[2:]
    manager = terminado.UniqueTermManager(shell_command=command)
    app = tornado.web.Application([(r"/websocket", terminado.TermSocket, {"term_manager": manager})])
    app.listen(port, "127.0.0.1")
    print(f"terminado {terminado.__version__} on 127.0.0.1:{port}", flush=True)
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
