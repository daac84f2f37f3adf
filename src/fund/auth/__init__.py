"""Login, access tokens and the role checks every route uses."""
