"""The hub side of cloud sync: the hub server, device logins and accounts, fleet configs, provisioning, fleet status."""
