# Jupyter server settings of chexstack/jupyter. The token is read from $JUPYTER_TOKEN by Jupyter itself
# (never stored in the image); publish the port on 127.0.0.1 unless it is exposed on purpose.
import os

c = get_config()  # type: ignore[name-defined]  # noqa: F821
c.ServerApp.ip = "0.0.0.0"
c.ServerApp.port = int(os.environ.get("JUPYTER_PORT", "8888"))
c.ServerApp.open_browser = False
c.ServerApp.root_dir = os.environ.get("JUPYTER_ROOT_DIR", "/home/chexstack/work")
c.ServerApp.allow_remote_access = True
# Nobody logs in with a password; the token is the only credential.
c.PasswordIdentityProvider.allow_password_change = False
