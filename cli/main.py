"""The `forecast` command: parse (`cli.parser`), build `Settings` (environment, `.env`, then
flags), run the subcommand, and turn user errors into one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import redis
from pydantic import ValidationError

from cli.parser import SETTING_DESTS, build_parser
from forecast.errors import ForecastError
from forecast.secrets import mask_secrets
from forecast.settings import load_settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `forecast` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in SETTING_DESTS}
    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        parser.exit(2, f"forecast: error: setting {field}: {err['msg']}\n")
    try:
        rc = args.run(args, settings)
    except ForecastError as exc:
        parser.exit(2, f"forecast: error: {exc}\n")
    except redis.AuthenticationError:
        parser.exit(
            2,
            "forecast: error: Redis refused the credentials for "
            f"{mask_secrets(settings.redis_url)}\n",
        )
    except redis.ConnectionError as exc:
        where = (f"the primary of {settings.sentinel_master!r} via sentinels {settings.sentinels}"
                 if settings.sentinels else f"Redis at {mask_secrets(settings.redis_url)}")
        parser.exit(2, f"forecast: error: cannot reach {where}: {exc}\n")
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
