"""os-vif's model for Snooze: versioned VIF objects (``versioned``, ``objects``), its errors
(``errors``) and the group manager's choice of plugin and versions for a host (``negotiate``).
The plugins that plug are the local controller's (``localcontroller.vif``)."""
