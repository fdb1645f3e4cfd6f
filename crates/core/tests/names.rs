//! One name mapping, both ways: round trips over every Key Vault name and every key the
//! mapping can represent, and the provider adapter asking for the vault's name.

use keyvault_invalidator_core::secrecy::ExposeSecret;
use keyvault_invalidator_core::{NameMapping, ProviderErrorKind, SecretProvider};
use keyvault_invalidator_testkit::InMemoryVault;
use proptest::prelude::*;

proptest! {
    #[test]
    fn every_key_vault_name_survives_vault_to_key_to_vault(name in "[A-Za-z0-9-]{1,127}") {
        let names = NameMapping::key_separator(":").vault_separator("--");
        prop_assert_eq!(names.to_vault_name(&names.to_cache_key(&name)), name);
    }

    #[test]
    fn every_key_whose_dashes_stand_apart_survives_key_to_vault_to_key(
        // Segments joined by single `:` or `-`: no `--`, no `-` beside a `:`.
        key in "[A-Za-z0-9_.]{1,10}([:-][A-Za-z0-9_.]{1,10}){0,5}"
    ) {
        let names = NameMapping::key_separator(":").vault_separator("--");
        prop_assert_eq!(names.to_cache_key(&names.to_vault_name(&key)), key);
    }

    #[test]
    fn identity_and_empty_separators_leave_every_name_alone(name in "\\PC{0,40}") {
        for names in [
            NameMapping::identity(),
            NameMapping::default(),
            NameMapping::key_separator("").vault_separator("--"),
            NameMapping::key_separator(":").vault_separator(""),
        ] {
            prop_assert_eq!(names.to_cache_key(&name), name.clone());
            prop_assert_eq!(names.to_vault_name(&name), name.clone());
        }
    }
}

#[test]
fn a_separator_maps_each_occurrence_both_ways() {
    let names = NameMapping::key_separator(":").vault_separator("--");
    assert_eq!(names.to_vault_name("A:B:C"), "A--B--C");
    assert_eq!(names.to_cache_key("A--B--C"), "A:B:C");
    assert_eq!(
        names.to_cache_key("A---B"),
        "A:-B",
        "left to right, as str::replace"
    );
    assert_eq!(names.to_vault_name("A:-B"), "A---B");
    assert_eq!(
        names.to_cache_key(&names.to_vault_name("A-:B")),
        "A:-B",
        "a `-` beside a `:` does not come back where it was: such keys cannot be told apart"
    );
}

#[test]
fn custom_mappings_use_each_function_for_its_direction() {
    let names = NameMapping::custom(
        |vault| format!("app/{vault}"),
        |key| key.trim_start_matches("app/").to_owned(),
    );
    assert_eq!(names.to_cache_key("db-password"), "app/db-password");
    assert_eq!(names.to_vault_name("app/db-password"), "db-password");
}

#[tokio::test]
async fn a_provider_with_names_asks_for_the_vaults_name_for_current_and_given_versions() {
    let vault = InMemoryVault::new();
    let v1 = vault.set("ServiceBus--ConnectionString", "first");
    vault.rotate("ServiceBus--ConnectionString", "second");
    let provider = vault
        .clone()
        .with_names(NameMapping::key_separator(":").vault_separator("--"));

    let current = provider
        .get_secret("ServiceBus:ConnectionString")
        .await
        .unwrap();
    assert_eq!(current.value().expose_secret(), "second");
    let old = provider
        .get_secret_version("ServiceBus:ConnectionString", &v1)
        .await
        .unwrap();
    assert_eq!(old.value().expose_secret(), "first");
    assert_eq!(vault.calls("ServiceBus--ConnectionString"), 2);

    let missing = provider.get_secret("Other:Key").await.unwrap_err();
    assert_eq!(missing.kind, ProviderErrorKind::NotFound);
    assert_eq!(
        missing.name, "Other--Key",
        "the error names what the vault was asked"
    );
}
