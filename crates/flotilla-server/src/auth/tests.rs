use super::*;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair};

fn headers(token: Option<&str>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if let Some(t) = token {
        h.insert(http::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
    }
    h
}

fn auth_file(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "[[users]]\nname = \"alice\"\ntoken_hash = \"{}\"\ngroups = [\"research\"]\n\
         [[users]]\nname = \"root\"\ntoken_hash = \"{}\"\n\
         [[executors]]\ncluster = \"onprem-lab\"\ntoken_hash = \"{}\"\n\
         [roles]\nadmin = [\"user:root\"]\nviewer = [\"group:sre\"]\n{extra}",
        hash_token("alice-token"),
        hash_token("root-token"),
        hash_token("lab-token"),
    );
    let path = dir.join("auth.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn tokens_map_to_callers_and_bad_credentials_all_look_alike() {
    let dir = tempfile::tempdir().unwrap();
    let auth = Authenticator::load(&auth_file(dir.path(), "")).await.unwrap();
    assert_eq!(
        auth.authenticate(&headers(Some("alice-token"))).await.unwrap(),
        Caller::User { name: "alice".into(), groups: vec!["research".into()] }
    );
    assert_eq!(auth.authenticate(&headers(Some("lab-token"))).await.unwrap(), Caller::Executor { cluster: "onprem-lab".into() });
    let missing = auth.authenticate(&headers(None)).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let wrong = auth.authenticate(&headers(Some("alice-token-x"))).await.unwrap_err();
    let garbage = auth.authenticate(&headers(Some("a.b.c"))).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert_eq!(wrong.message(), garbage.message(), "an unknown token and garbage get the same answer");
    assert!(!wrong.message().contains("alice"));
    let mut basic = http::HeaderMap::new();
    basic.insert(http::header::AUTHORIZATION, "Basic YWxpY2U6eA==".parse().unwrap());
    assert_eq!(auth.authenticate(&basic).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let huge = "x".repeat(MAX_CREDENTIAL_BYTES + 1);
    assert_eq!(auth.authenticate(&headers(Some(&huge))).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(Authenticator::open().authenticate(&headers(None)).await.unwrap(), Caller::Open);
}

#[tokio::test]
async fn roles_and_permits_decide_what_a_caller_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[[grants]]\nqueue = \"agents\"\npermit = \"user:bob=watch\"\n";
    let auth = Authenticator::load(&auth_file(dir.path(), extra)).await.unwrap();
    let z = auth.authorizer();
    let alice = Caller::User { name: "alice".into(), groups: vec!["research".into()] };
    let bob = Caller::User { name: "bob".into(), groups: vec![] };
    let sre = Caller::User { name: "carol".into(), groups: vec!["sre".into()] };
    let root = Caller::User { name: "root".into(), groups: vec![] };
    let lab = Caller::Executor { cluster: "onprem-lab".into() };
    let mut research = Queue::new("research", 1.0);
    research.permits = vec![Permit::parse("group:research=submit,cancel,watch").unwrap()];
    let agents = Queue::new("agents", 1.0);

    assert!(z.allows_queue(&alice, &research, Verb::Submit));
    assert!(!z.allows_queue(&alice, &research, Verb::Admin), "a permit without admin cannot change the queue");
    assert!(!z.allows_queue(&alice, &agents, Verb::Submit));
    assert!(!z.allows_queue(&bob, &research, Verb::Watch));
    assert!(z.allows_queue(&bob, &agents, Verb::Watch), "granted in the auth file");
    assert!(!z.allows_queue(&bob, &agents, Verb::Cancel));
    assert!(z.allows_queue(&sre, &research, Verb::Watch) && !z.allows_queue(&sre, &research, Verb::Cancel), "viewers read only");
    assert!(z.allows_queue(&root, &agents, Verb::Admin));
    assert!(!z.allows_queue(&lab, &research, Verb::Watch), "an executor credential is not a user");
    assert!(z.require_admin(&alice, "CreateQueue").unwrap_err().message().contains("cluster admin role"));
    assert!(z.require_admin(&root, "CreateQueue").is_ok());
    let e = z.require(&bob, "research", &research.permits, Verb::Cancel).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("`cancel` permission on queue \"research\""), "{}", e.message());
    assert!(z.require_cluster(&lab, "onprem-lab").is_ok());
    assert!(z.require_cluster(&lab, "eks-us-east").unwrap_err().message().contains("may not act for cluster"));
    assert!(z.require_cluster(&root, "onprem-lab").is_err(), "not even an admin poses as an executor");
    let open = Authenticator::open().authorizer();
    assert!(open.allows_queue(&Caller::Open, &agents, Verb::Admin) && open.require_cluster(&Caller::Open, "x").is_ok());
}

#[tokio::test]
async fn a_changed_auth_file_is_reloaded_and_a_broken_one_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = auth_file(dir.path(), "");
    let auth = Arc::new(Authenticator::load(&path).await.unwrap());
    let period = Duration::from_millis(50);
    let fresh = tokio::spawn(auth.clone().keep_fresh_every(period));
    // A new token for alice; the modification time must differ from the first write's.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let text = std::fs::read_to_string(&path).unwrap().replace(&hash_token("alice-token"), &hash_token("alice-new"));
    std::fs::write(&path, text).unwrap();
    let mut reloaded = false;
    for _ in 0..50 {
        if auth.authenticate(&headers(Some("alice-new"))).await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the new token works without a restart");
    assert!(auth.authenticate(&headers(Some("alice-token"))).await.is_err(), "the old token no longer does");
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&path, "not = [valid").unwrap();
    tokio::time::sleep(period * 10).await;
    assert!(auth.authenticate(&headers(Some("alice-new"))).await.is_ok(), "a broken file keeps the previous one");
    fresh.abort();
}

struct Provider {
    key: Ed25519KeyPair,
    jwks: PathBuf,
    _dir: tempfile::TempDir,
    auth: Authenticator,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn provider() -> Provider {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let set =
        serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "x": b64(key.public_key().as_ref())}]});
    std::fs::write(&jwks, set.to_string()).unwrap();
    let extra = "[oidc]\nissuer = \"https://issuer.test\"\naudience = \"flotilla\"\njwks_file = \"jwks.json\"\ngroups_claim = \"groups\"\n";
    let auth = Authenticator::load(&auth_file(dir.path(), extra)).await.unwrap();
    Provider { key, jwks, _dir: dir, auth }
}

impl Provider {
    fn sign(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(sig.as_ref()))
    }

    fn token(&self, claims: serde_json::Value) -> String {
        self.sign(serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}), claims)
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn oidc_tokens_are_checked_for_signature_issuer_audience_and_expiry() {
    let p = provider().await;
    let good = serde_json::json!({"sub": "dana", "groups": ["research", "sre"], "iss": "https://issuer.test", "aud": "flotilla", "exp": now_s() + 600});
    assert_eq!(
        p.auth.authenticate(&headers(Some(&p.token(good.clone())))).await.unwrap(),
        Caller::User { name: "dana".into(), groups: vec!["research".into(), "sre".into()] }
    );
    let mut expired = good.clone();
    expired["exp"] = (now_s() - 3600).into();
    let mut other_aud = good.clone();
    other_aud["aud"] = "someone-else".into();
    let mut other_iss = good.clone();
    other_iss["iss"] = "https://evil.test".into();
    for (what, claims) in [("expired", expired), ("audience", other_aud), ("issuer", other_iss)] {
        let e = p.auth.authenticate(&headers(Some(&p.token(claims)))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}");
    }
    // A signature by another key, and a token whose payload was edited after signing.
    let t = p.token(good.clone());
    let mut parts: Vec<&str> = t.split('.').collect();
    let mut admin = good.clone();
    admin["sub"] = "root".into();
    let forged_payload = b64(admin.to_string().as_bytes());
    parts[1] = &forged_payload;
    assert!(p.auth.authenticate(&headers(Some(&parts.join(".")))).await.is_err(), "an edited payload fails the signature");
    // HS256 with the public key as the secret: the classic algorithm confusion.
    let hs = p.sign(serde_json::json!({"alg": "HS256", "kid": "k1"}), good.clone());
    assert!(p.auth.authenticate(&headers(Some(&hs))).await.is_err(), "symmetric algorithms are refused");
    let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(good.to_string().as_bytes()));
    assert!(p.auth.authenticate(&headers(Some(&none))).await.is_err(), "unsigned tokens are refused");
    assert!(p.jwks.exists());
}

#[tokio::test]
async fn a_rotated_provider_key_is_picked_up_on_first_use() {
    let p = provider().await;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let new_key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let set = serde_json::json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": b64(p.key.public_key().as_ref())},
        {"kty": "OKP", "crv": "Ed25519", "kid": "k2", "x": b64(new_key.public_key().as_ref())},
    ]});
    std::fs::write(&p.jwks, set.to_string()).unwrap();
    // The set was loaded at start; pretend that was long ago so the unknown kid refreshes it.
    *p.auth.oidc().unwrap().last_refresh_for_tests() = None;
    let claims = serde_json::json!({"sub": "erin", "iss": "https://issuer.test", "aud": "flotilla", "exp": now_s() + 600});
    let input =
        format!("{}.{}", b64(serde_json::json!({"alg": "EdDSA", "kid": "k2"}).to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let token = format!("{input}.{}", b64(new_key.sign(input.as_bytes()).as_ref()));
    assert_eq!(p.auth.authenticate(&headers(Some(&token))).await.unwrap(), Caller::User { name: "erin".into(), groups: vec![] });
}

#[tokio::test]
async fn the_key_set_is_fetched_from_a_url_and_an_unreachable_one_fails_only_id_tokens() {
    let p = provider().await;
    let set = std::fs::read_to_string(&p.jwks).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/keys", axum::routing::get(move || std::future::ready(set.clone())));
    let served = tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[oidc]\nissuer = \"https://issuer.test\"\naudience = \"flotilla\"\njwks_url = \"http://{addr}/keys\"\n");
    let auth = Authenticator::load(&auth_file(dir.path(), &extra)).await.unwrap();
    let claims = serde_json::json!({"sub": "fay", "iss": "https://issuer.test", "aud": "flotilla", "exp": now_s() + 600});
    let token = p.token(claims);
    assert_eq!(auth.authenticate(&headers(Some(&token))).await.unwrap(), Caller::User { name: "fay".into(), groups: vec![] });
    served.abort();

    // A provider that does not answer: the server starts, ID tokens fail, API tokens work.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let extra = format!("[oidc]\nissuer = \"https://issuer.test\"\naudience = \"flotilla\"\njwks_url = \"http://{closed}/keys\"\n");
    let auth = Authenticator::load(&auth_file(dir.path(), &extra)).await.expect("starts without the provider");
    assert_eq!(auth.authenticate(&headers(Some(&token))).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert!(auth.authenticate(&headers(Some("alice-token"))).await.is_ok());
}
