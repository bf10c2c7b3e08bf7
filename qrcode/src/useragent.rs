//! Which app opened a static code's page, from the User-Agent, decided by a table of rules held as
//! data.
//!
//! The built-in table ([`UaTable::default`]), first match wins, substrings are case-sensitive:
//!
//! | app | contains | unless it contains |
//! |---|---|---|
//! | paymux wallet | `PaymuxWallet/` | |
//! | WeChat | `MicroMessenger` | `wxwork` (WeCom cannot pay with WeChat Pay) |
//! | Alipay | `AlipayClient` or `AliApp(AP` | |
//! | UnionPay QuickPass | `UnionPay/` (details *unverified*) | |
//! | QQ | `QQ/` | `MicroMessenger` |
//! | JD Finance | `JDJR` | |
//!
//! Anything else is [`ScanningApp::Unknown`]: the page then lists the apps that can pay; it is never
//! an error. Operators can load their own table from TOML or JSON.

use paymux_model::WalletBrand;
use serde::{Deserialize, Serialize};

/// The app that scanned the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanningApp {
    Wechat,
    Alipay,
    Unionpay,
    Paymux,
    Qq,
    JdFinance,
    Unknown,
}

impl ScanningApp {
    /// The wallet that pays inside this app, if the platform can take its money there.
    pub fn wallet(self) -> Option<WalletBrand> {
        match self {
            ScanningApp::Wechat => Some(WalletBrand::Wechat),
            ScanningApp::Alipay => Some(WalletBrand::Alipay),
            ScanningApp::Unionpay => Some(WalletBrand::Unionpay),
            ScanningApp::Paymux => Some(WalletBrand::Paymux),
            ScanningApp::Qq | ScanningApp::JdFinance | ScanningApp::Unknown => None,
        }
    }
}

/// One rule: the app, if the User-Agent contains any of `any_of` and none of `none_of`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UaRule {
    pub app: ScanningApp,
    pub any_of: Vec<String>,
    #[serde(default)]
    pub none_of: Vec<String>,
}

impl UaRule {
    fn matches(&self, ua: &str) -> bool {
        self.any_of.iter().any(|s| ua.contains(s.as_str()))
            && !self.none_of.iter().any(|s| ua.contains(s.as_str()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse the User-Agent table: {0}")]
pub struct UaTableError(String);

/// An ordered list of rules; the first that matches names the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UaTable {
    pub rules: Vec<UaRule>,
}

fn ua_rule(app: ScanningApp, any_of: &[&str], none_of: &[&str]) -> UaRule {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    UaRule {
        app,
        any_of: owned(any_of),
        none_of: owned(none_of),
    }
}

impl Default for UaTable {
    fn default() -> UaTable {
        use ScanningApp::*;
        UaTable {
            rules: vec![
                ua_rule(Paymux, &["PaymuxWallet/"], &[]),
                ua_rule(Wechat, &["MicroMessenger"], &["wxwork"]),
                ua_rule(Alipay, &["AlipayClient", "AliApp(AP"], &[]),
                ua_rule(Unionpay, &["UnionPay/"], &[]),
                ua_rule(Qq, &["QQ/"], &["MicroMessenger"]),
                ua_rule(JdFinance, &["JDJR"], &[]),
            ],
        }
    }
}

impl UaTable {
    pub fn from_toml(text: &str) -> Result<UaTable, UaTableError> {
        toml::from_str(text).map_err(|e| UaTableError(e.to_string()))
    }

    pub fn from_json(text: &str) -> Result<UaTable, UaTableError> {
        serde_json::from_str(text).map_err(|e| UaTableError(e.to_string()))
    }

    pub fn detect(&self, user_agent: &str) -> ScanningApp {
        self.rules
            .iter()
            .find(|r| r.matches(user_agent))
            .map_or(ScanningApp::Unknown, |r| r.app)
    }
}

/// Detects with the built-in table.
pub fn detect(user_agent: &str) -> ScanningApp {
    UaTable::default().detect(user_agent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ScanningApp::*;

    const WECHAT_ANDROID: &str = "Mozilla/5.0 (Linux; Android 13; V2196A Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/111.0.5563.116 Mobile Safari/537.36 XWEB/1110005 MMWEBSDK/20230805 MMWEBID/2594 MicroMessenger/8.0.42.2460(0x28002A35) WeChat/arm64 Weixin NetType/WIFI Language/zh_CN ABI/arm64";
    const WECHAT_IOS_MINIPROGRAM: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.40(0x1800282a) NetType/WIFI Language/zh_CN miniProgram/wx1234567890abcdef";
    const WECOM: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 16_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 wxwork/4.1.6 MicroMessenger/7.0.1 Language/zh ColorScheme/Light";
    const ALIPAY_ANDROID: &str = "Mozilla/5.0 (Linux; U; Android 12; zh-CN; PEHM00 Build/SKQ1.210216.001) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/69.0.3497.100 UWS/3.22.2.59 Mobile Safari/537.36 UCBS/3.22.2.59_230817113331 ChannelId(0) NebulaSDK/1.8.100112 Nebula AlipayDefined(nt:WIFI,ws:360|0|3.0) AliApp(AP/10.5.26.8000) AlipayClient/10.5.26.8000 Language/zh-Hans useStatusBar/true isConcaveScreen/true Region/CNAriver/1.0.0";
    const ALIPAY_IOS_OLD: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 14_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 ChannelId(0) Nebula WK RVKType(1) AliApp(AP/10.2.13.6000) Language/zh-Hans";
    const DINGTALK: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 16_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 AliApp(DingTalk/7.0.10) com.laiwang.DingTalk/28934133 Channel/201200 language/zh-Hans-CN UT4Aplus/0.0.6 WK";
    const UNIONPAY: &str = "Mozilla/5.0 (Linux; Android 11; M2011K2C Build/RKQ1.200928.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/83.0.4103.106 Mobile Safari/537.36 (com.unionpay.mobilepay) (cordova 7.0.0) (updebug 0) (version 930) (UnionPay/1.0 CloudPay) (clientVersion 190) (language zh_CN) (languageFamily zh_CN) (upHtml) (walletMode 00)";
    const QQ: &str = "Mozilla/5.0 (Linux; Android 10; SEA-AL10 Build/HUAWEISEA-AL10; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/77.0.3865.120 MQQBrowser/6.2 TBS/045714 Mobile Safari/537.36 V1_AND_SQ_8.8.20_2082_YYB_D A_8082000 QQ/8.8.20.5865 NetType/WIFI WebP/0.3.0 Pixel/1080";
    const SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
    const OURS: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36 PaymuxWallet/2.3.1";

    #[test]
    fn detects_realistic_user_agents() {
        assert_eq!(detect(WECHAT_ANDROID), Wechat);
        assert_eq!(detect(WECHAT_IOS_MINIPROGRAM), Wechat);
        assert_eq!(detect(WECOM), Unknown);
        assert_eq!(detect(ALIPAY_ANDROID), Alipay);
        assert_eq!(detect(ALIPAY_IOS_OLD), Alipay);
        assert_eq!(detect(DINGTALK), Unknown);
        assert_eq!(detect(UNIONPAY), Unionpay);
        assert_eq!(detect(QQ), Qq);
        assert_eq!(detect(SAFARI), Unknown);
        assert_eq!(detect(OURS), Paymux);
        assert_eq!(detect(""), Unknown);
        assert_eq!(detect(OURS).wallet(), Some(WalletBrand::Paymux));
        assert_eq!(detect(QQ).wallet(), None);
    }

    #[test]
    fn table_loads_from_toml_and_json() {
        let table = UaTable::from_toml(
            r#"
            [[rules]]
            app = "wechat"
            any_of = ["MicroMessenger"]

            [[rules]]
            app = "alipay"
            any_of = ["AlipayClient"]
            "#,
        )
        .expect("valid table");
        // Without the wxwork exclusion, WeCom counts as WeChat.
        assert_eq!(table.detect(WECOM), Wechat);
        assert_eq!(table.detect(ALIPAY_IOS_OLD), Unknown);
        let json = serde_json::to_string(&UaTable::default()).expect("serialise");
        assert_eq!(UaTable::from_json(&json), Ok(UaTable::default()));
        assert!(UaTable::from_json(r#"{"rules":[{"app":"icq","any_of":[]}]}"#).is_err());
    }
}
