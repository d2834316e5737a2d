"""cstore: an online-learning update store on Apache Cassandra."""
from cstore.client import Client, ModelHandle
from cstore.errors import CstoreError
from cstore.store import ModelState, Store, connect
from cstore.updates import UpdateResult

__all__ = ["connect", "Store", "Client", "ModelHandle", "ModelState", "UpdateResult", "CstoreError"]
__version__ = "0.1.0"
