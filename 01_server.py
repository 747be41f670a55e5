"""01_server.py: the swergio server every component connects to.

The hub of the swarm: clients register and join rooms, and every message sent to a room is
passed on to the room's other members. The server is swergio's, with a sturdier connection loop
(`swarm_rl.server.SwarmServer`); host and port come from SWERGIO_HOST and SWERGIO_PORT.
"""
from swarm_rl.component import setup_component
from swarm_rl.server import serve

if __name__ == "__main__":
    serve(setup_component("server", description=__doc__))
