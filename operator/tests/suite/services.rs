//! Smoke tests of the real services the harness starts: if these pass, the
//! backends' tests run against OpenBao, moto and PostgreSQL for real.

use std::collections::HashMap;

use crate::support::{service, unique};

#[tokio::test]
async fn openbao_writes_and_reads_a_kv_secret() {
    let addr = service("ENCLAVE_TEST_VAULT_ADDR", "an OpenBao server");
    let token = service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token");
    let client = crate::support::vault_client(&addr, &token);
    let path = format!("enclave-smoke/{}", unique("kv"));
    let data = HashMap::from([("answer".to_owned(), "42".to_owned())]);
    vaultrs::kv2::set(&client, "secret", &path, &data)
        .await
        .unwrap();
    let read: HashMap<String, String> = vaultrs::kv2::read(&client, "secret", &path).await.unwrap();
    assert_eq!(read, data);
    let missing = vaultrs::kv2::read::<HashMap<String, String>>(
        &client,
        "secret",
        "enclave-smoke/never-written",
    )
    .await;
    assert!(missing.is_err(), "a real server has no such secret");
}

#[tokio::test]
async fn moto_creates_and_describes_an_rds_instance() {
    use aws_sdk_rds::config::{BehaviorVersion, Credentials, Region};
    let endpoint = service(
        "ENCLAVE_TEST_AWS_ENDPOINT",
        "moto_server (the AWS API emulator)",
    );
    let config = aws_sdk_rds::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .build();
    let rds = aws_sdk_rds::Client::from_conf(config);
    let id = unique("smoke").replace('_', "-");
    rds.create_db_instance()
        .db_instance_identifier(&id)
        .db_instance_class("db.t4g.micro")
        .engine("postgres")
        .master_username("enclave_admin")
        .master_user_password("not-a-real-password-0123456789")
        .allocated_storage(20)
        .send()
        .await
        .unwrap();
    let found = rds
        .describe_db_instances()
        .db_instance_identifier(&id)
        .send()
        .await
        .unwrap();
    let instances = found.db_instances();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].db_instance_identifier(), Some(id.as_str()));
    assert_eq!(instances[0].engine(), Some("postgres"));
    let missing = rds
        .describe_db_instances()
        .db_instance_identifier("enclave-never-created")
        .send()
        .await;
    assert!(missing.is_err(), "describing an unknown instance fails");
    rds.delete_db_instance()
        .db_instance_identifier(&id)
        .skip_final_snapshot(true)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn postgres_accepts_the_right_password_and_refuses_a_wrong_one() {
    let conninfo = service("ENCLAVE_TEST_POSTGRES", "a PostgreSQL server");
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT current_user::text, current_setting('server_version_num')::int",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert!(row.get::<_, i32>(1) >= 150_000);
    drop(client);
    task.await.unwrap().unwrap();

    let wrong = conninfo.replace("password=postgres", "password=wrong");
    let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong password is refused");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{err}"
    );
}
