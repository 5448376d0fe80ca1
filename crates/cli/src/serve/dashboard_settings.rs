//! `socketcluster serve --dashboard`: the operator dashboard's settings, as flags,
//! `SOCKETCLUSTER_DASHBOARD*` environment variables and top-level TOML keys
//! (`dashboard = true`, `dashboard-password = "..."`).

use clap::Args;
use clap::builder::BoolishValueParser;

use super::proxy_settings::InvalidSetting;

/// Dashboard flags (flattened into `serve`).
#[derive(Debug, Args, Default)]
pub(crate) struct DashboardArgs {
    /// Serve the operator dashboard under `/dashboard/` on the same port (needs
    /// --dashboard-password). Default off.
    #[arg(long, env = "SOCKETCLUSTER_DASHBOARD", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    dashboard: Option<bool>,
    /// Password of the dashboard's login page (required with --dashboard; never the
    /// auth key). Default none.
    #[arg(long, env = "SOCKETCLUSTER_DASHBOARD_PASSWORD")]
    dashboard_password: Option<String>,
}

/// The effective dashboard settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DashboardSettings {
    /// `--dashboard`, default false.
    pub(crate) enabled: bool,
    /// `--dashboard-password`, default none.
    pub(crate) password: Option<String>,
}

impl DashboardArgs {
    /// Merge with the TOML keys (flags and environment win) and validate: an enabled
    /// dashboard needs a non-empty password.
    pub(crate) fn resolve(
        &self,
        file_enabled: Option<bool>,
        file_password: Option<String>,
    ) -> Result<DashboardSettings, InvalidSetting> {
        let s = DashboardSettings {
            enabled: self.dashboard.or(file_enabled).unwrap_or(false),
            password: self.dashboard_password.clone().or(file_password),
        };
        if s.enabled && s.password.as_deref().is_none_or(str::is_empty) {
            return Err(InvalidSetting {
                setting: "dashboard-password",
                message: "the dashboard needs a password: set --dashboard-password \
                          (SOCKETCLUSTER_DASHBOARD_PASSWORD, or `dashboard-password` in the \
                          TOML file), or turn --dashboard off"
                    .into(),
            });
        }
        Ok(s)
    }
}
