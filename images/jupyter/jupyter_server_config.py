# Jupyter server settings of chexstack/jupyter. The token comes from $JUPYTER_TOKEN or the file
# $JUPYTER_TOKEN_FILE names (never stored in the image); publish the port on 127.0.0.1 unless it is exposed on purpose.
import os

c = get_config()  # type: ignore[name-defined]  # noqa: F821
c.ServerApp.ip = "0.0.0.0"
c.ServerApp.port = int(os.environ.get("JUPYTER_PORT", "8888"))
c.ServerApp.open_browser = False
c.ServerApp.root_dir = os.environ.get("JUPYTER_ROOT_DIR", "/home/chexstack/work")
c.ServerApp.allow_remote_access = True
# The platform passes the token as a compose secret file (JUPYTER_TOKEN_FILE). Jupyter would read the
# file as it is, trailing newline included, and then refuse every request: strip it here.
if os.environ.get("JUPYTER_TOKEN_FILE") and not os.environ.get("JUPYTER_TOKEN"):
    with open(os.environ["JUPYTER_TOKEN_FILE"], encoding="utf-8") as token_file:
        c.IdentityProvider.token = token_file.read().strip()
# Nobody logs in with a password; the token is the only credential.
c.PasswordIdentityProvider.allow_password_change = False
# Picked files reach the kernel inside one websocket message (the upload widget's value): tornado's
# 10 MiB default would drop a typical uncompressed DICOM CR. 160 MiB covers a batch of a few of them;
# chexstack.ingest still refuses any single file over its own limit (64 MiB).
c.ServerApp.tornado_settings = {"websocket_max_message_size": 160 * 1024 * 1024}
