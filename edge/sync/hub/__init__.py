"""The hub side of cloud sync: the hub server, device logins and permissions, provisioning, fleet status."""
