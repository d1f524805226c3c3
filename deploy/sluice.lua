-- sluice.lua -- the configuration the packaged service runs
--
-- Installed as /etc/sluice/sluice.lua (a conffile: an upgrade keeps your
-- edits). The systemd unit runs `sluice run /etc/sluice/sluice.lua`;
-- `systemctl reload sluice` (SIGHUP) re-reads it and every collector
-- script without a restart, and keeps the running set when the new one
-- does not load.
--
-- Secrets do not belong here: put them in /etc/default/sluice
-- (NAME=value lines, read by the unit, mode 0600) and read them with
-- collector.env("NAME"), which never prints them.
--
-- Any setting can be overridden from the environment without editing
-- this file: SLUICE_LOG__LEVEL=debug, SLUICE_ADMIN__PORT=9200,
-- SLUICE_COLLECTORS__BINANCE_KLINES__INTERVAL=30 (README, "Configurations
-- and collectors").
return {
  -- the unit's StateDirectory: owned by the service's dynamic user, kept
  -- across restarts and upgrades; back it up online with sqlite3's .backup
  store = "/var/lib/sluice/sluice.db",
  -- one JSON object per line, to the journal (journalctl -u sluice)
  log = { level = "info", format = "json" },
  -- SIGTERM (systemctl stop) gives running work this long; the unit's
  -- TimeoutStopSec (30 s) is longer
  shutdown_timeout = 20,
  -- loopback only: /health, /status, /metrics for Prometheus on this host.
  -- Binding beyond loopback needs token = collector.env("SLUICE_ADMIN_TOKEN").
  admin = { host = "127.0.0.1", port = 9108 },
  collectors = {
    { use = "binance_klines", symbols = { "BTCUSDT", "ETHUSDT" }, candle = "1m", interval = 60 },
  },
}
