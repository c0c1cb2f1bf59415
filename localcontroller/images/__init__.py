"""Guest disk images on a local controller: the NoCloud config drive a guest reads its
name and network from (:mod:`.configdrive`), the image cache and the per-VM overlays."""
