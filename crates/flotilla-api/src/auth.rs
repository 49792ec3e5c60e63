//! Client credentials: a bearer token sent with every call.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A channel whose calls carry the caller's token, if it has one.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to each request (nothing without a token).
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// No credentials: for servers without authentication.
    pub fn none() -> BearerToken {
        BearerToken(None)
    }

    /// A token as given on the command line or read from a file (surrounding whitespace,
    /// such as a file's trailing newline, is dropped). The error never echoes the token.
    pub fn new(token: &str) -> Result<BearerToken, String> {
        let token = token.trim();
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        let value = format!("Bearer {token}").parse().map_err(|_| "the token holds characters a header cannot carry".to_string())?;
        Ok(BearerToken(Some(value)))
    }

    /// `token`, or the first line of `file`, or none.
    pub fn from_flags(token: Option<&str>, file: Option<&std::path::Path>) -> Result<BearerToken, String> {
        match (token, file) {
            (Some(_), Some(_)) => Err("give --token or --token-file, not both".into()),
            (Some(t), None) => BearerToken::new(t).map_err(|e| format!("--token: {e}")),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f).map_err(|e| format!("--token-file {}: {e}", f.display()))?;
                BearerToken::new(&text).map_err(|e| format!("--token-file {}: {e}", f.display()))
            }
            (None, None) => Ok(BearerToken::none()),
        }
    }

    pub fn channel(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, self.clone())
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BearerToken(<redacted>)" } else { "BearerToken(none)" })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
