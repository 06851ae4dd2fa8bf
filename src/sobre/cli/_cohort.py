def register(sub) -> None:  # filled in below
    pass
