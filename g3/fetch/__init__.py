"""Getting G3's published artifacts: `g3 fetch official` (`g3.fetch.official`), the hub download it uses
(`g3.fetch.download`) and where the files live (`g3.fetch.registry`)."""
